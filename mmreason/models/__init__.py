"""Model families: plain nn.Modules that load and run without a Trainer.

Importing this package registers every built-in family and named model (each
family registers itself in its own file).
"""

from mmreason.models import baseline, encoder, mccot, meteor, scorer, star, virl  # noqa: F401
