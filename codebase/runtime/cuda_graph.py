"""The training step captured once in a CUDA graph and replayed (--cuda-graph): at this model's size an eager
step on a GPU waits on the launching of its kernels, which a graph replays at once."""
import torch


class GraphedStep:
    """step(gray) as a CUDA graph. The first WARMUP calls are real steps, run eagerly on a side stream, as a
    capture needs (Adam makes its state in them). If the capture fails, training goes on eagerly, saying so."""

    WARMUP = 3

    def __init__(self, step, batch, width, device, log):
        self.step, self.log = step, log
        self.gray = torch.zeros(batch, width, device=device)  # the graph's input, at a fixed address
        self.calls, self.graph, self.stats, self.eager_only = 0, None, None, False

    def __call__(self, gray):
        self.gray.copy_(gray)
        self.calls += 1
        if self.eager_only:
            return self.step(self.gray)
        if self.calls <= self.WARMUP:
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
                    self.stats = self.step(self.gray)  # the graph's output, refilled by each replay
                self.graph = graph
            except Exception as e:  # any capture failure: the eager step is still correct
                self.log(f"CUDA graph capture failed ({type(e).__name__}: {e}); training eagerly.")
                self.eager_only = True
                return self.step(self.gray)
        self.graph.replay()
        return self.stats
