from tuner.cli import main

# Guarded: libraries that start worker processes by spawning re-import this module.
if __name__ == "__main__":
    main()
