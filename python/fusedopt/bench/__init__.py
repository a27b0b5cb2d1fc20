"""The benchmark suite: python -m fusedopt.bench [--quick] [--filter RE] [--threads N,M] [--json PATH] [--plot PATH]

Times each fused kernel, and each optimizer step also through fusedopt.optim's class (opt.step,
as a torch.optim user calls it), against the NumPy reference and, when torch is importable,
against torch.optim (fused=True; foreach for RMSprop, which has no fused CPU kernel), in one run,
and shows each as a percentage of an in-run bandwidth probe: the simplest loop that moves the
same bytes (fusedopt._core.stream_probe). Params and grads are plain NumPy arrays for everyone;
each implementation allocates its own state (fusedopt.zeros_like, np.full_like, torch). Each
figure is timed in several repeats; the tables show the best, the JSON file the best and the
median, and a timing whose median is far above its best is flagged as noisy rather than
entering a ratio. The machine may be shared: compare ratios from one run, not absolutes
across runs.

Each table is a Section (section.py): optimizers.py, batchnorm.py; cli.py lists them.
"""
from .cli import SECTIONS, main
from .section import Case, Row, Section

__all__ = ["SECTIONS", "Case", "Row", "Section", "main"]
