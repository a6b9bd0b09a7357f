def load(path, mode='r'):
    return open(path, mode)

def save(path):
    return open(path, 'w')
