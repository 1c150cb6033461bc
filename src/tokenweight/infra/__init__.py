"""Infrastructure: errors, constants, files and folders, config files, schemas and model
loading — what every other layer builds on. Imports nothing from the layers above."""
