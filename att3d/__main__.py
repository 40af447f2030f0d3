"""``python -m att3d`` (also what ``torchrun -m att3d train ...`` runs)."""

from att3d.commands.app import main

main()
