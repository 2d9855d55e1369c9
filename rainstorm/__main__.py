from rainstorm.cli import main

main()
