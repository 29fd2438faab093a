from lightning_meta.cli import cli_main

cli_main()
