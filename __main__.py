"""`python -m nnspec` (and `torchrun -m nnspec ...`) runs the command line."""
from nnspec.cli import main

main()
