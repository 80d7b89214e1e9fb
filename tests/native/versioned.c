/* Symbol versions for tests/test_symbols.py: vfunc@VERS_1 (hidden, old), vfunc@@VERS_2 (default),
   vonly@@VERS_2, an IFUNC, and a static function that lives only in .symtab. */
int vfunc_old(int x) { return x; }
int vfunc_new(int x) { return x + 1; }
__asm__(".symver vfunc_old,vfunc@VERS_1");
__asm__(".symver vfunc_new,vfunc@@VERS_2");

int vonly(int x) { return x * 2; }

static int impl(int x) { return x - 1; }
static int (*resolve_picked(void))(int) { return impl; }
int picked(int x) __attribute__((ifunc("resolve_picked")));

static int __attribute__((noinline, used)) local_only(int x) { return x + 7; }
int calls_local(int x) { return local_only(x); }
