"""``accelerate launch -m nashflow.training --spec spec.json``: see :func:`nashflow.training.trainer.main`."""

from nashflow.training.trainer import main

if __name__ == "__main__":
    main()
