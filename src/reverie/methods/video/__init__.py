"""Videos: walks, keyframed animation and dream videos."""
