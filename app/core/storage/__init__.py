"""Where bytes live: result files (disk, Redis or an object store) and the object store
client itself."""
