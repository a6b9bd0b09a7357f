SETTINGS = {
    'first': 0,
    'a': 1,
}

OTHER = 2
