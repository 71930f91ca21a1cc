"""What every layer uses: errors, files (io), resources, progress bars, tasks, metrics, validation messages, wording,
interrupts and the version. Import the modules themselves (``mito.core.io``): this package loads nothing on its own."""
