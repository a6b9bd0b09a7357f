def a():
    return

def b():
    return
