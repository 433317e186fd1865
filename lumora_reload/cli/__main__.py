"""`python -m lumora_reload.cli`: the same as the `lumora-reload` command."""

from lumora_reload.cli import main

if __name__ == "__main__":
    main()
