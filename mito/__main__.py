"""`python -m mito ...` (and `torchrun -m mito extract ...`) runs the command line."""

from mito.cli import main

if __name__ == "__main__":
    main()
