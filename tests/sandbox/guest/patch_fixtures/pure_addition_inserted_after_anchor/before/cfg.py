SETTINGS = {
    'a': 1,
}

OTHER = 2
