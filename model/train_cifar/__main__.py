"""``python -m model.train_cifar``."""


from .methods import main

if __name__ == "__main__":
    main()
