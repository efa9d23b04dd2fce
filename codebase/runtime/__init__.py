"""The plumbing of a run, out of the way of the model and the training loop: files written whole (files),
checkpoints (checkpoint), metrics.csv and the progress bar (metrics), Ctrl-C (signals), the compiled and the
CUDA-graph step (compiled, cuda_graph), one-line errors (errors), the device and threads (device, cpus).
Nothing here imports from the rest of the project: codebase/run.py wires these together."""
