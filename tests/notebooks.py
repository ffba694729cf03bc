"""Notebooks as other tools save them, shared by the contract tests and bench/bench_run.py (one home for the research notebook)."""

RESEARCH = [   # a notebook nobody wrote for mlkit: numpy, sklearn, autolog, log_metric, a figure
    "alpha = 0.1\nseed = 0\nn = 200",
    "import numpy as np, matplotlib.pyplot as plt, mlflow\nfrom sklearn.linear_model import Ridge",
    "mlflow.sklearn.autolog(log_models=False, log_datasets=False)\nrng = np.random.default_rng(seed)\n"
    "X = rng.normal(size=(n, 3)); y = X @ np.array([1.0, 2.0, 3.0]) + rng.normal(0, 0.1, n)\nm = Ridge(alpha=alpha).fit(X, y)",
    "mlflow.log_metric('r2', m.score(X, y))\nfig, ax = plt.subplots(); ax.scatter(y, m.predict(X)); mlflow.log_figure(fig, 'diag/fit.png')\nplt.show()",
]


def notebook_text(cells, *, kernelspec=False) -> str:
    "A notebook as another tool might save it: the first cell tagged `parameters`, no kernel metadata unless asked."
    import nbformat
    nb = nbformat.v4.new_notebook()
    if kernelspec: nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, src in enumerate(cells):
        nb.cells.append(nbformat.v4.new_code_cell(src, metadata={"tags": ["parameters"]} if i == 0 else {}))
    return nbformat.writes(nb)
