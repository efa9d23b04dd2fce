"""The self-check: which of your functions is wrong, and why.

    python -m codebase.check              # every function, in a few seconds on a CPU
    python -m codebase.check --only kl    # only the checks whose name contains "kl"
    python -m codebase.check --results    # your trained models' figures against the accepted ranges

registry.py lists the checks. For each one, probe.py runs your functions on fixed inputs (inputs.py) and
records what they return; judge.py compares that with the expected values and names the likely mistake
(mistakes.py). functions.py and bounds.py hold the checks of utils.py's functions and of the models' bounds.
The grader runs the same probe on your code and judges its results on its own side.
"""
