def main(argv=None):  # placeholder
    return 0
