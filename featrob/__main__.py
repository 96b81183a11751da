"""``python -m featrob`` (also what ``torchrun -m featrob`` runs)."""

from featrob.cli import main

if __name__ == "__main__":
    main()
