"""Example mmengine-style configs (load them with functrain.config.file.load_config or the
``functrain`` command; they are not imported). A package so that ``custom_imports`` can name
``examples.configs.my_project.*`` from the repository root."""
