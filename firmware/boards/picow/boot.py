# Runs first at every reset, before main.py. Nothing board-specific is needed before the main loop
# on the Pico W; the file exists so that an old boot.py left on the board is replaced.
