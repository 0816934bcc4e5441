"""The datasets calm writes and ships (installed as `calm.datasets`).

- `demo/`: the bundled demo set of 60 questions in six languages, read with `calm.data.demo_items`;
- `corpus/`: a tiny medical textbook corpus for retrieval, found with `calm.passages.bundled_corpus`;
- `testbed/`: the testbed set, read with `calm.testbed_data.testbed_items`.
"""
