"""``python -m mmreason`` runs the command line."""

from mmreason.cli import main

main()
