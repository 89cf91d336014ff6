"""``python -m quantmesh.cli`` runs the same CLI as the ``quantmesh`` command."""

from quantmesh.cli.app import main

main()
