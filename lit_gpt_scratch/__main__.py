"""``python -m lit_gpt_scratch <subcommand>``."""

from lit_gpt_scratch.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
