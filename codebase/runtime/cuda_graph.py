"""The training step captured once in a CUDA graph and replayed (--cuda-graph).

At this model's size an eager step on a GPU is bound by the launching of its kernels, which a graph
replays at once. Training on CUDA is eager unless --cuda-graph is given: the graph has not yet been
run on a real GPU, and its fallback catches a capture that fails, not one that trains wrongly.
"""
import torch


class GraphedStep:
    """step(gray) as a CUDA graph. The first WARMUP steps run eagerly on a side stream (they are real
    training steps), which lets Adam make its state before the capture. If the capture fails, training
    goes on eagerly and says so."""

    WARMUP = 3

    def __init__(self, step, batch, width, device, log):
        self.step = step
        self.log = log
        self.gray = torch.zeros(batch, width, device=device)  # the graph's static input
        self.graph = None
        self.stats = None
        self.eager_steps = 0
        self.eager_only = False

    def __call__(self, gray):
        self.gray.copy_(gray)
        if self.eager_only:
            return self.step(self.gray)
        if self.eager_steps < self.WARMUP:
            self.eager_steps += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                stats = self.step(self.gray)
            torch.cuda.current_stream().wait_stream(side)
            return stats
        if self.graph is None:
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self.stats = self.step(self.gray)
                self.graph = graph
            except Exception as e:  # any capture failure: the eager step is still correct
                self.log(f"CUDA graph capture failed ({type(e).__name__}: {e}); training eagerly.")
                self.eager_only = True
                return self.step(self.gray)
        self.graph.replay()
        return self.stats
