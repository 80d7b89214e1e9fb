// A small C++ library for tests/test_symbols.py: mangled names the reader must demangle.
#include <cstddef>

namespace ingero_test {

class Widget {
  public:
    explicit Widget(int w) : w_(w) {}
    int area() const;
    void resize(int w);
    void resize(int w, int h);

  private:
    int w_;
};

int Widget::area() const { return w_ * w_; }
void Widget::resize(int w) { w_ = w; }
void Widget::resize(int w, int h) { w_ = w * h; }

template <typename T>
T twice(T x) {
    return x + x;
}
template int twice<int>(int);
template double twice<double>(double);

// not exported: only in .symtab (until the file is stripped)
static int __attribute__((noinline, used)) hidden_helper(int x) { return x * 3; }

int use_helper(int x) { return hidden_helper(x); }

}  // namespace ingero_test

extern "C" int plain_c_entry(int x) { return ingero_test::use_helper(x) + 1; }
