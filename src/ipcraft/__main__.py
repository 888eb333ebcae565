"""``python -m ipcraft``: the same as the ``ipcraft`` command."""
from ._cli import main

main()
