# The example keeps no data of its own; its tasks only pretend to work.
