"""Jobs: the worker that runs generation, training and evaluation from the store's persistent
queue, the executors that call the library, and the progress events they emit."""
