"""Sources of ineffectual computation in a stack point's model (Nikolic et al., ISPASS
2019): value sparsity, precision and bit sparsity of every conv/linear layer's operands,
and the work that zero-skipping, dynamic-precision and bit-serial engines would save.

``python characterize.py`` runs it on any point (``dlas.characterize.run``). Kept light
to import: the heavy modules load when used.
"""

from dlas.characterize.config import register

register()
