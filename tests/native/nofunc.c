/* A shared library that exports data but no function: read_symbols must raise NoSymbols. */
int ingero_answer = 42;
const char ingero_label[] = "no functions here";
