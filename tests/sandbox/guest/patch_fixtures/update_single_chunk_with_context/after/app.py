import sys

def main():
    print('hello')
    return 0
