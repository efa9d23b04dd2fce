"""The plumbing of a run, out of the way of the model and the training loop.

    files.py        writing files whole (atomic), locks, the PNG grids
    checkpoint.py   checked, weights-only checkpoints, and the random stream they carry
    metrics.py      metrics.csv (written as training goes, read on resume) and the progress bar
    signals.py      Ctrl-C, SIGTERM and SIGHUP as a request to stop after a checkpoint
    cuda_graph.py   the training step as one CUDA graph (--cuda-graph)
    compiled.py     the training step compiled by torch.compile (--compile), with its eager trial and fallback
    errors.py       the errors a user can fix: one line each, and an exit status
    cpus.py         the CPUs a run may use (affinity and a container's quota): its default thread count
    device.py       the run's device and CPU threads, chosen once

Nothing here imports from the rest of the project: codebase/run.py, above, wires these together.
"""
