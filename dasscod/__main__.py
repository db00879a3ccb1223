from dasscod.cli import main

main()
