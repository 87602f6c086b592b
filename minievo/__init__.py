"""minievo: evolutionary synthesis of sparse deep neural networks, from scratch.

``minievo.evolve(model, train, test, val, out=...)`` runs a lineage of your own network on your
own data (:mod:`minievo.api`); the rest lives in its modules (layers, training, evolution,
sparse). Importing minievo loads nothing else.
"""


def __getattr__(name):
    if name in ("evolve", "EvolutionResult"):
        from minievo import api  # noqa: PLC0415

        return getattr(api, name)
    raise AttributeError(f"module 'minievo' has no attribute {name!r}")
