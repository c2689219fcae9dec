"""`python -m evalsuite …` (also what `torchrun -m evalsuite …` runs)."""

from evalsuite.cli import main

if __name__ == "__main__":
    main()
