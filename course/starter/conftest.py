import os

if "PYTEST_XDIST_WORKER" in os.environ:
    # Several test workers share the cores: one thread each (OpenMP threads that outnumber the
    # cores run several times slower each).
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
