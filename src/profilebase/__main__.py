from profilebase.cli import main

main()
