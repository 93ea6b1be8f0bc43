from sparsekit.cli import main

main()
