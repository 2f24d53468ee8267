"""The workflow around the runs: configuration, the experiment grid, paths and artifact I/O, the step list that dvc.yaml and the Snakefile share, code fingerprints, resources, devices and logs."""
