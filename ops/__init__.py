"""Operations tooling over the coordinator's REST API (the ``rcd order|campaign|meters|workorders`` commands)."""
