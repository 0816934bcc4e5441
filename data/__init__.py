"""The datasets calm writes and ships (installed as `calm.datasets`): `testbed/`, read with `calm.testbed_data.testbed_items`."""
