"""``python -m jaxopt_ft``: the command line (`jaxopt_ft.cli`)."""

from jaxopt_ft.cli import run

if __name__ == "__main__":
    run()
