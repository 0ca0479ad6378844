"""``python -m conclugen …``: the ``conclugen`` command."""

from conclugen.cli import main

if __name__ == "__main__":
    main(prog_name="python -m conclugen")
