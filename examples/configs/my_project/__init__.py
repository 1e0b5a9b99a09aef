"""A user's own optimizer, hook and optimizer wrapper constructor, registered for configs.

Nothing is imported here: a config lists the modules it needs in ``custom_imports`` (the
seed's "方式二"), and importing a module runs its ``register_module`` decorators.
"""
