from pfcompile.cli import main

main()
