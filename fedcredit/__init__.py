"""fedcredit: federated credit scoring with record-level differential privacy.

The code lives in the packages the design card names — ``configs`` (schemas, mappings and
their loaders), ``clients`` (what runs at an institution), ``models``, ``privacy``,
``server`` and ``simulation``. This package only holds the ``fedcredit`` command.
"""
