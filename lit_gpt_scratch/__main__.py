"""``python -m lit_gpt_scratch <subcommand>``."""

from lit_gpt_scratch.cli.main import exit_with, main

if __name__ == "__main__":
    exit_with(main())
